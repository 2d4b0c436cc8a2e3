"""The plugin contracts (attack, defense, detector, analysis, library adapters) and the registries."""
