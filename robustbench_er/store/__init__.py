"""The results store (SQLite) and its leases; imports only the core."""
