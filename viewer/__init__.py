"""The browser visualizer (issue 25), being built: `render` turns every control of the page into pixels with the
same rendering path as gen_images.py, and `worker` renders off the request path, always the newest request."""
