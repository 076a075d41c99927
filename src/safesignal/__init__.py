"""safesignal."""
