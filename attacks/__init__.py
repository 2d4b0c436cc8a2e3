"""Built-in attack plugins, one module each (declared in the ``robustbench_er.attacks`` entry-point group)."""
