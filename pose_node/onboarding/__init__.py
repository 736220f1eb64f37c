"""Onboarding: load CAD meshes (or generate procedural objects) into ObjectModel; later, templates."""
