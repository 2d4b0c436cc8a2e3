"""Built-in detector plugins, one file each (entry-point group ``robustbench_er.detectors``)."""
