"""The presentation layer: what the report, the board and the CLI share to show results.

    tables   the Markdown table writer (also the CLI's aligned text table) and Markdown escaping
    html     the one HTML page shell and stylesheet, tables and images for it
    style    the one matplotlib style and the one wall drawer

A low-level part: it imports only libraries and the ground modules (metrics, wall), never the board, the report
or the harness. Nothing is imported here: `tables` must stay light (the CLI imports it at start-up), `style` loads
matplotlib."""
