"""doctor layer."""
