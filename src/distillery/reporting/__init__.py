"""distillery.reporting"""
