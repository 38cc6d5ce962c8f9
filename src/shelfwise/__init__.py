"""Shelfwise: real-time personalization engine for online retail."""
__version__ = "0.1.0"
