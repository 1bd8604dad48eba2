"""Who is asking: bearer tokens and the secret that signs them (server side only)."""
