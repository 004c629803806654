#!/bin/sh
# Checks the "emacs" column of cases.tsv against Emacs 28 itself
# (Debian's emacs-nox): every claim about what Emacs answers, including the
# documented differences, is run through auth-source-search.
# Usage: sh verify-emacs.sh  (from any directory). Exit 0 when all agree.
dir=$(cd "$(dirname "$0")" && pwd)
command -v emacs >/dev/null 2>&1 || { echo "emacs not installed" >&2; exit 77; }
# gpg-token.authinfo's tokens are encrypted to the corpus's test key.
GNUPGHOME=$(mktemp -d) || exit 1
export GNUPGHOME
trap 'gpgconf --kill gpg-agent >/dev/null 2>&1; rm -rf "$GNUPGHOME"' EXIT
gpg --batch --quiet --import "$dir/gpg-token-key.asc" 2>/dev/null ||
    { echo "cannot import the corpus's gpg key" >&2; exit 1; }
fail=0 n=0
tab=$(printf '\t')
cr=$(printf '\r')
while IFS="$tab" read -r file host port user line login password emacs; do
	case $file in '#'*|'') continue ;; esac
	n=$((n + 1))
	# a line end inside a value is written \n, as cases.tsv records it
	got=$(emacs --batch -Q -l "$dir/emacs-lookup.el" "$dir/$file" \
	    "$host" "$port" "$user" 2>/dev/null | sed ':a;N;$!ba;s/\n/\\n/g')
	if [ "$emacs" = "=" ]; then
		if [ "$line" = 0 ]; then
			want=none
		else
			l=$( [ "$login" = - ] && echo nil || printf '"%s"' "$(printf %s "$login" | sed 's/[\\"]/\\&/g')")
			case $password in
			-) p=nil ;;
			'""') p='""' ;;
			*) p=$(printf '"%s"' "$(printf %s "$password" | sed 's/[\\"]/\\&/g; s/\\\\r/'"$cr"'/g')") ;;
			esac
			want="found $l $p"
		fi
	else
		want=$emacs
	fi
	case $want in
	error) case $got in error*) ok=1 ;; *) ok=0 ;; esac ;;
	*) [ "$got" = "$want" ] && ok=1 || ok=0 ;;
	esac
	if [ $ok = 0 ]; then
		echo "FAIL $file $host $port '$user': emacs says [$got], cases.tsv says [$want]"
		fail=$((fail + 1))
	fi
done < "$dir/cases.tsv"
echo "$n lookups, $fail disagreements with Emacs"
[ $fail = 0 ]
