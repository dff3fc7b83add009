"""The discrete-event cluster simulator and its policies; may import every part of cdmo."""
