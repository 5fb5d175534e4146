"""Trajectory synthesis: queries from instance lists, expert trajectories that recover from mistakes,
filters, and exports for SFT and RL (see rsagent.synth.run.synthesize)."""
