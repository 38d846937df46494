#!/bin/sh
# Stand-in for the official mysql image's contract: MYSQL_ROOT_PASSWORD
# (required), MYSQL_DATABASE (created); serves on 3306; mysqladmin on PATH.
set -e
if [ -z "$MYSQL_ROOT_PASSWORD" ]; then
  echo "error: database is uninitialized and password option is not specified" >&2
  exit 1
fi
[ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
init=/tmp/init.sql
{
  echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$MYSQL_ROOT_PASSWORD';"
  echo "CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '$MYSQL_ROOT_PASSWORD';"
  echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
  [ -z "$MYSQL_DATABASE" ] || echo "CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`;"
} > "$init"
chown mysql "$init"
exec mariadbd --user=mysql --datadir=/var/lib/mysql --bind-address=0.0.0.0 --init-file="$init" "$@"
