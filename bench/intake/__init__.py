"""Lead intake over HTTP: concurrent keep-alive clients post valid leads to the real server."""
