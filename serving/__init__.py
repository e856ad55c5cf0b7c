"""The BentoML retrieval service and its web page: thin glue around m3ret functions."""
