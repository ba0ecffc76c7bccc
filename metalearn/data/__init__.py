"""Task families: host-side samplers that return numpy `Episode`s from a seed."""
