# bash completion for imagectl. Subcommands and flags are read from imagectl's own --help, so
# they cannot drift from it; image names come from the daemon (`imagectl list`, through the
# --socket typed on the line, if any). Installed as share/bash-completion/completions/imagectl.

# The subcommands `imagectl --help` lists.
_imagectl_subcommands() {
  "$1" --help 2>/dev/null |
    awk '/^Subcommands:/ { on = 1; next } on && /^$/ { exit } on && /^  [a-z]/ { print $1 }'
}

# The flags `imagectl [SUBCOMMAND] --help` lists (its Options section).
_imagectl_flags() {
  local ctl=$1
  shift
  "$ctl" "$@" --help 2>/dev/null |
    awk '/^Options:/ { on = 1; next } on && /^[^ ]/ { exit } on' |
    grep -o -- '--[a-z][a-z-]*' | sort -u
}

# Image names, or nothing when the daemon cannot be reached (quickly: completion must not hang).
_imagectl_images() {
  "$@" --timeout 2 list 2>/dev/null | awk 'NR > 1 { print $1 }'
}

_imagectl() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
  local ctl=${COMP_WORDS[0]} i sub='' sub_at=0
  local -a client=("$ctl")
  COMPREPLY=()
  # Global flags come before the subcommand; --socket also decides which daemon to ask.
  for ((i = 1; i < COMP_CWORD; i++)); do
    case ${COMP_WORDS[i]} in
      --socket | --timeout)
        [[ ${COMP_WORDS[i]} == --socket ]] && client+=(--socket "${COMP_WORDS[i + 1]}")
        ((i++))
        ;;
      -*) ;;
      *)
        sub=${COMP_WORDS[i]}
        sub_at=$i
        break
        ;;
    esac
  done

  case $prev in
    --socket)
      mapfile -t COMPREPLY < <(compgen -f -- "$cur")
      return
      ;;
    --timeout | --timeout-ms | --zero-fill) return ;;
    --format)
      mapfile -t COMPREPLY < <(compgen -W "auto raw sparse qcow qcow2" -- "$cur")
      return
      ;;
  esac
  if [[ -z $sub ]]; then
    if [[ $cur == -* ]]; then
      mapfile -t COMPREPLY < <(compgen -W "$(_imagectl_flags "$ctl")" -- "$cur")
    else
      mapfile -t COMPREPLY < <(compgen -W "$(_imagectl_subcommands "$ctl")" -- "$cur")
    fi
    return
  fi
  if [[ $cur == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$(_imagectl_flags "$ctl" "$sub")" -- "$cur")
    return
  fi

  # Which positional is being typed (flags in between do not count).
  local n=0
  for ((i = sub_at + 1; i < COMP_CWORD; i++)); do
    [[ ${COMP_WORDS[i]} == -* ]] || ((n++))
  done
  case $sub in
    info | delete | map | unmap | zero-fill | resize | disable | watch)
      ((n == 0)) &&
        mapfile -t COMPREPLY < <(compgen -W "$(_imagectl_images "${client[@]}")" -- "$cur")
      ;;
    import)
      # FILE, then NAME: a new name, or an existing image with --into-existing.
      if ((n == 0)); then
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
      elif ((n == 1)) && [[ " ${COMP_WORDS[*]} " == *" --into-existing "* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_imagectl_images "${client[@]}")" -- "$cur")
      fi
      ;;
  esac
}

complete -F _imagectl imagectl
