"""AlteredAvatar fast style adaptation."""
