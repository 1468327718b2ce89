"""Trust rotation: staged, resumable, abortable (see docs/rotation.md)."""
