"""The operator console: server-rendered pages over the five services public APIs."""
