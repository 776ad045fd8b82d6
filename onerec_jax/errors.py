"""The one base class of the errors a user's input causes (a bad file, config, rule or
request): the command line reports them in one line with exit code 2; anything else is a
bug and keeps its traceback."""


class InputError(ValueError):
  """Input the product refuses; the message names the file, key, shape or value."""
