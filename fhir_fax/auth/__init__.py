"""Who may do what: access policies, SMART scopes, tokens."""
