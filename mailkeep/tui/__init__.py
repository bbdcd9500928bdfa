"""The administration console (Textual); not built yet."""
