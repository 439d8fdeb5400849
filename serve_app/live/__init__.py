"""Live camera streams: frames in over a WebSocket, stylized frames out, the latest wins."""
