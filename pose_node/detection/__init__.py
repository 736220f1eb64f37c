"""Detection stage: class-agnostic proposals and their matching to known objects."""
