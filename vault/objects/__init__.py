"""Objects: named, versioned, stored only as ciphertext (gateway and client-side modes)."""
