"""Core types and records: errors, configs and enums, run directories and JSON records, this CPU."""
