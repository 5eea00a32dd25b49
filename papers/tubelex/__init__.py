"""TUBELEX YouTube word frequencies."""
