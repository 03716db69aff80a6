"""The local stack for the demo and the tests: a real control plane, a pod runner, clamd and a
Comm100 simulator. Never shipped in the image."""
