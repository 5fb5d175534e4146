"""Tools, overlay rendering and the episode state machine."""
