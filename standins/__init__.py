"""Real stand-ins for the services the plugin talks to, for tests, benchmarks and the demo."""
