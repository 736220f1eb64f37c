"""Onboarding: CAD meshes (or procedural objects) into ObjectModels, and their rendered templates and descriptors (cached)."""
