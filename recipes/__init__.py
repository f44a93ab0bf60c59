"""The recipes shipped with vrtk (YAML files in this folder; `vrtk recipes` lists them)."""
