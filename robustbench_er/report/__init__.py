"""Reports: tables, sections, plots, HTML and the writers, built from the store."""
