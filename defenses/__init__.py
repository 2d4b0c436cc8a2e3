"""Built-in defense plugins, one module each (declared in the ``robustbench_er.defenses`` entry-point group)."""
