"""voice-agent: a self-hosted, real-time voice agent."""

__version__ = "0.1.0"
