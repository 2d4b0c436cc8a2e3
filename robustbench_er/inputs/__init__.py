"""The typed input schema: flags, experiment files and their sections, turned into engine specs."""
