"""Command-line interface: parses user input into typed configs, reports progress and errors."""
