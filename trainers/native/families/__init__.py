"""Model families the native trainer supports, one module each."""
