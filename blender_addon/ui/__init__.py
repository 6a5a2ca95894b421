"""Blender UI of the add-on: settings (props), operators (ops) and the sidebar (panel)."""
