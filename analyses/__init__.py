"""Built-in analysis plugins, one file each (entry-point group ``robustbench_er.analyses``)."""
