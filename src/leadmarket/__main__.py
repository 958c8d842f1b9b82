from leadmarket.cli import app

app(prog_name="leadmarket")
