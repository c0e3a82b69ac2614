"""Content-addressed module store, pull policy, expiry and purge."""
