"""Serving building blocks shared by the router and the workers."""
