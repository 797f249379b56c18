"""The embedded local stack and the `maas` CLI: the whole loop on one machine, no Docker."""
