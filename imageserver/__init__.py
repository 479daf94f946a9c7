"""The Distributed ImageServer: upload, store, serve and resize images (the data plane)."""
