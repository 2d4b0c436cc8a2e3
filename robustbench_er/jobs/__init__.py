"""What a command does end to end: sweep, detect, analyze, dry run, import-model, zoo."""
