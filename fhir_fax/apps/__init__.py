"""Browser apps the module serves from its own package data (no Node at run time, no build step)."""
