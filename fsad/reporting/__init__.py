"""Paper-style tables, figures and the paper's own numbers."""
