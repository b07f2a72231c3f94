"""The agent's HTTP surface."""
